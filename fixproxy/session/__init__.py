"""The session layer (pure): the state machine, sequence translation, Logon backoff, the
maintenance schedule, which peers may connect, and the texts the engine and operator read.
Nothing here awaits, imports trio or touches a socket; the caller passes the time in."""

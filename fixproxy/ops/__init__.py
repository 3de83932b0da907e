"""Operations, synchronous: metrics, the status board, logs, the message journal, saved
sequence numbers and the process control files. No trio."""

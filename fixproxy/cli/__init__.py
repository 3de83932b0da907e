"""The command line (click): the only caller of ``trio.run`` and the only place errors become
exit codes."""

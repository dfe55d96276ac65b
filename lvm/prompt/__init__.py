"""`lvm prompt`: the prompt file format, the session behind the REPL and batch mode, terminal display and the
example prompts."""

"""`lvm prompt`: prompting a model with images.

prompts.py is the prompt modes and file format; session.py the session every mode runs on (model, tokenizer,
prompt, sampling settings, generation, saving); repl.py the interactive loop and its /commands; batch.py the
released JSONL batch format; modes.py the three modes of the command; display.py terminal previews;
examples.py the example prompts in prompts/."""

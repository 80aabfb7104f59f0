"""Built-in task handlers (LLM chat family, Voxtral transcription) and their contract."""

"""Output parsers that split generated text into OpenAI message parts (pure logic, no I/O)."""

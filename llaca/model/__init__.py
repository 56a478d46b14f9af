"""The LLaVA model: loading any LLaVA, answering a conversation, the one shared model of a process and the adapters resident in it."""

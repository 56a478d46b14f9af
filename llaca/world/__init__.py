"""The synthetic visual world: seeded image/question/answer generators in task families, and
the embedded tiny LLaVA that is trained on it (`python -m llaca.world build`)."""

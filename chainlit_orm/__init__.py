"""chainlit-orm: production persistence for Chainlit apps."""

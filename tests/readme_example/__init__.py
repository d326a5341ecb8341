"""The original README's consumer integration, served by a real daphne in the tests."""

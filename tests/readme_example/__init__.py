"""The original README's consumer integration, served by a real uvicorn in the tests."""

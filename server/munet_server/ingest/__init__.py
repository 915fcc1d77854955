"""Upload -> store: validate streamed examples and write them into the store."""

"""Call recordings: audio files in a storage directory, with a metadata index in PostgreSQL."""

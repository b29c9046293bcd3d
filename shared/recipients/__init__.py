"""The register of recipients (GDPR Art. 19): who the company discloses which data to, and how
each is told of an erasure, restriction or lift. Versioned YAML beside the retention policy."""

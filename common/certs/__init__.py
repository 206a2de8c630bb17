"""Keys and certificates for an encrypted, authenticated federation (built on the cryptography package)."""

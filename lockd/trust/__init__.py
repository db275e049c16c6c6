"""What makes a manifest trustworthy: keys, DSSE envelopes, in-toto statements, the OCI registry
that carries them, the audit chain and its Merkle tree with signed checkpoints."""

"""What makes a manifest trustworthy: keys, DSSE envelopes, in-toto statements, the OCI registry
that carries them and the audit chain."""

"""The objects lockd passes around, frozen: what a target is (environment, gpusuite, host), what
lockd records (manifest) and what a verification says (report)."""

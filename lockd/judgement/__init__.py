"""Pure judgement: policies, the check registry, comparing an observation with a manifest, and
the rules of compatibility, coherence, loaded libraries, locks and admission. No I/O but
reading policy files."""

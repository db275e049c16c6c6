"""What lockd reads about a target: the targets themselves (local, docker), the host's view
(kernel, overlay upper directories), installed files against their RECORDs, the GPU suite's run
and the caches that keep what was read."""

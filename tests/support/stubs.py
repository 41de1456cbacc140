"""Stand-ins that let host-side code run without its GPU kernels."""


class NoKernel:
    """Stands in for a Triton kernel: indexing by a grid gives a launch that does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None

"""Helpers the tests stand on (the benchmarks borrow some): running a script under Triton's interpreter, a
torch.compile equivalence check, a poisoned allocator, SASS counting of compiled kernels, a kernel stub.
Developer tools, kept out of the installed package."""

"""Searches over rate: landing a format on a byte budget, the prober, the knapsack allocator and the
`allocate` command."""

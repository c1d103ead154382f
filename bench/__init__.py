"""Benchmarks of jaxseg against its peers and the hardware limit (`python -m bench.run`)."""

"""CUDA kernels for kern: CUDA C sources (*.cu) and the CuPy backend that runs them.

`kern.cuda.backend` imports cupy (and fails with the reason when there is no cupy or GPU);
`kern.cuda.sources` does not, so the sources can be compiled and checked anywhere.
"""

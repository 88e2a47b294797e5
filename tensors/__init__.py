"""numbeam.tensors: tensor handles and shared-memory buffers (issue: Tensors). Empty until then."""

"""Writing files safely: a reader never sees half a file (`atomic`)."""

"""Small userspace drivers built on pyvfio, for emulated devices and examples."""

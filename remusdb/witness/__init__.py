"""The witness: a leader key under a lease in etcd, so that at most one host runs the VM."""

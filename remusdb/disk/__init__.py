"""The guest's disk on the primary: an NBD export over a raw image, and its epoch write log.

`nbd` (the protocol, pure), `image` (raw-image I/O both hosts use), `writelog` (the writes of
each epoch, cut at checkpoints), `server` (the NBD server QEMU reads and writes through).
"""

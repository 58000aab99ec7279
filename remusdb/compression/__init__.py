"""ASC: XOR against an LRU page cache, then RLE or LZ4, after the VM has resumed."""

"""What `remusdb bench` offers: the benchmarks and the protection modes it runs them in.

Apart from the runner so that the command's parser can name them without importing the runner,
the drivers or their database clients (`remusdb status` builds the same parser).
"""

BENCHMARKS = ("tpcc", "tpch", "tpcw")
MODES = {  # mode -> [optimizations]; None = no protection at all
    "unprotected": None,
    "remus": {"compression": "off", "rt": False, "cp": False},
    "asc": {"compression": "xor-lz4", "rt": False, "cp": False},
    "rt": {"compression": "off", "rt": True, "cp": False},
    "cp": {"compression": "off", "rt": False, "cp": True},
    "all": {"compression": "xor-lz4", "rt": True, "cp": True},
}

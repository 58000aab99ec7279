"""The lab: a whole HA deployment on one machine, to exercise the product as its users would.

Hosts are network namespaces joined by a switch (`net`), the daemons run as real processes
inside them (`daemons`), and clients load the guest's databases from the client host (`load`,
`dbclient`). Used by the tests, the benchmarks, the failover drills and the demo — never by
the daemons themselves.
"""

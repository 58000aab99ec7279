"""QEMU 7.2's migration stream and COLO messages, as pure code: bytes in, records out (and back).

`format` (constants, records), `reader` (buffered reads whose views stay valid), `pages` (an
epoch's RAM records), `parse` (stream and COLO messages), `write` (replies and the failover
stream). Nothing here opens a socket: the COLO endpoint hands a Reader its connection.
"""

from remusdb.checkpoint.stream.format import *  # noqa: F403
from remusdb.checkpoint.stream.format import (  # noqa: F401  (names tests and tools use)
    Colo,
    Configuration,
    RamBlock,
    Section,
    StreamError,
    Truncated,
)
from remusdb.checkpoint.stream.pages import PageSet  # noqa: F401
from remusdb.checkpoint.stream.parse import (  # noqa: F401
    InitialState,
    RamParser,
    read_configuration,
    read_footer,
    read_initial,
    read_live_state,
    read_message,
    read_section_header,
)
from remusdb.checkpoint.stream.reader import BufferPool, Reader  # noqa: F401
from remusdb.checkpoint.stream.write import (  # noqa: F401
    message,
    write_configuration,
    write_incoming,
)

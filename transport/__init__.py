"""numbeam.transport: nodes, ZeroMQ links and the msgpack wire (issue: Nodes). Empty until then."""

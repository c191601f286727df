"""A stdio MCP server with one tool that appends its effect to ``AL_EFFECTS``."""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("agentledger-test")


@server.tool()
def book_room(room: str) -> str:
    """Book a meeting room."""
    with open(os.environ["AL_EFFECTS"], "a") as f:
        f.write(f"book_room - {json.dumps({'room': room})}\n")
    return f"booked {room}"


if __name__ == "__main__":
    server.run("stdio")

"""OCPP-J WebSocket adapter: handshake, connection loop, message handlers."""

//! SOCKS5 client (RFC 1928 CONNECT, RFC 1929 username/password) as a sans-IO state machine.

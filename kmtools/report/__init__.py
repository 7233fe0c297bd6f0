"""Result schema, gates, rendering and figures."""

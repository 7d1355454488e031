"""Code shared by both services: errors, the tensor codec, settings, signed artifacts, the server bootstrap."""

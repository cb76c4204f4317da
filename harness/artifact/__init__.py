"""The decoder: the container file, packing, layout and reshaping that turn encoded units into one artifact
file and back. It imports only the core and the plugin protocols, so its files are the decoder's code bytes."""

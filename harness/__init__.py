"""bytegolf: compare weight formats by the bytes of a real artifact and the model it decodes to."""

__version__ = "0.1.0"

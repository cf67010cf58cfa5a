"""tlapp: transfer learning on images, as an engine, a command line and a Streamlit app."""

from tlapp.errors import TlappError

__all__ = ["TlappError"]
__version__ = "0.1.0"

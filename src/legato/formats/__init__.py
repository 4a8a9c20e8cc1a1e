"""Loaders: turn definition documents (native YAML/JSON, services-in-order JSON) into the model."""

from legato.formats.loader import Definition, load_definition, parse_document

__all__ = ["Definition", "load_definition", "parse_document"]

"""modellane's Ray-free core: settings, schemas, registry client, routing and validation."""

"""Text generation: the parameters, stop strings, the token loop and the OpenAI wire format.

Plain Python (and torch, in :mod:`app.generation.engine` only): the model server runs the
loop, the gateway speaks the OpenAI API and server-sent events (docs/generation.md).
"""

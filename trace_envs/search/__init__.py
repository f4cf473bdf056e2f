"""Multi-hop QA with a search tool: retrievers, a retrieval server and client, QA suites.

Submodules import their heavy dependencies (bm25s, torch, transformers, uvicorn) only when a
retriever or server is built; importing this package costs nothing.
"""

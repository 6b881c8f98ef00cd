"""
Providers of L{devpi_tx.interfaces.IStorage} and
L{devpi_tx.interfaces.IFileStore}.
"""

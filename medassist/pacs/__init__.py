"""PACS integration: Orthanc watcher (DICOMweb), send-back outbox (STOW-RS), hardened C-STORE
listener, and the ingest queue they share.  Submodules are imported on use; nothing heavy is
loaded here."""

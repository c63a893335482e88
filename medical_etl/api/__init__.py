"""The analytical API and dashboard over the warehouse's marts (``medical-etl serve``).

``create_app`` (in :mod:`medical_etl.api.app`) builds the FastAPI application from explicit
connection parameters and paths; :mod:`medical_etl.api.serve` runs it under uvicorn.
"""

"""What both planes share that is not the model: small HTTP and timing helpers.

Below controller/ and proxy/: it imports neither of them.
"""

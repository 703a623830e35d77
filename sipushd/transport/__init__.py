"""sipushd.transport"""

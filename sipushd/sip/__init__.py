"""sipushd.sip"""

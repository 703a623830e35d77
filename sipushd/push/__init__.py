"""sipushd.push"""

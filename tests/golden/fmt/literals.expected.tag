tag "q\"uote" when remark == "a\"b\\c" and remark != "tab\traw" and remark != "\t\n"
tag "沉睡" when city == "北京" and remark != "zero\u200Bwidth" and remark != "ideo\u3000space"
tag "ctl" when remark == "\u0001\u007F\u00A0\u2028\uFEFF" and remark == "é😀"
let money = 5000.00 + 0.50 + 10.0 + 7 + 1.000
let spans = 2w + 7d + 0h + 90m + 30s
let flags = [true, false]
tag "空" when remark == "" or remark == " "
